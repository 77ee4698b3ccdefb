//! The page's controls, against real jackd and csound and a real browser (Debian's chromium,
//! driven through chromedriver): a block's panel shows its params as they play; a slider moved
//! and released changes the tone recorded at the DAC, the way `/orchestra/set` does; a refused
//! change shows why and changes nothing; what no control sends is ignored or refused as
//! `/orchestra/set` would refuse it; and the page fits a phone's screen.

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::*;
use common::*;
use fantoccini::Client;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// Run `js` in the page until it returns something other than null (never timed: the deadline
/// is generous); that value.
async fn until(page: &Client, what: &str, js: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = page.execute(js, vec![]).await.unwrap();
        if !value.is_null() {
            return value;
        }
        if Instant::now() > deadline {
            let panels = page
                .execute("return document.getElementById('panels').innerText", vec![])
                .await
                .unwrap();
            panic!("the page never showed {what}; its panels: {panels}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `freq` control of `tone` as the page shows it: its slider's range, step and value, the
/// value and unit beside it, and the answer to the last change.
const FREQ: &str = "const row = document.querySelector('[data-panel=tone] [data-param=freq]');
    if (!row) return null;
    const input = row.querySelector('input');
    const answer = row.querySelector('.answer');
    return {type: input.type, min: input.min, max: input.max, step: input.step, value: input.value,
            shown: row.querySelector('.value').textContent,
            answer: answer.textContent, ok: answer.dataset.ok ?? null};";

/// Move the slider to `value` and let go, as a hand does: `input` while dragging, `change` on
/// release. `max` first widens its range (to ask for what the manifest does not allow).
async fn slide(page: &Client, value: u32, max: Option<u32>) {
    page.execute(
        "const input = document.querySelector('[data-panel=tone] [data-param=freq] input');
         if (arguments[1] !== null) input.max = String(arguments[1]);
         input.value = String(arguments[0]);
         input.dispatchEvent(new Event('input', {bubbles: true}));
         input.dispatchEvent(new Event('change', {bubbles: true}));",
        vec![json!(value), json!(max)],
    )
    .await
    .unwrap();
}

/// The answer to the last change once it came: (ok, text).
async fn answered(page: &Client) -> (bool, String) {
    let freq = until(
        page,
        "the answer to the change",
        &format!(
            "const freq = (() => {{ {FREQ} }})();
             return freq && (freq.ok === 'true' || freq.ok === 'false') ? freq : null;"
        ),
    )
    .await;
    (
        freq["ok"] == "true",
        freq["answer"].as_str().unwrap().to_string(),
    )
}

/// `orchestra run` of the stage's script with a page on a port of its own and `extra`
/// arguments, once it plays; the browser, and the page open in it.
async fn playing_with_page(stage: &Stage, extra: &[&str]) -> (Running, Browser, Client) {
    let mut cmd = orchestra(&stage.server);
    cmd.arg("run")
        .arg(&stage.script)
        .args(["--osc", "127.0.0.1:0", "--web", "127.0.0.1:0"])
        .args(extra);
    let mut run = Running::spawn(cmd);
    let (_, url) = page_url(&mut run);
    run.wait_for("playing:", Duration::from_secs(30));
    let browser = Browser::start();
    let page = browser.open(&url).await;
    (run, browser, page)
}

/// The left channel's tone from `from_s` to `to_s` seconds after its first sound.
fn tone_between(wav: &Path, from_s: f64, to_s: f64) -> cloud_orchestra::analysis::ToneReport {
    use cloud_orchestra::analysis::{analyze, read_channel, SILENCE};
    let (left, rate) = read_channel(wav, 0).unwrap();
    let first = left.iter().position(|s| s.abs() > SILENCE).expect("sound");
    let at = |s: f64| first + (s * rate as f64) as usize;
    analyze(&left[at(from_s)..at(to_s)], rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slider_changes_the_tone_a_refusal_changes_nothing_and_the_page_fits_a_phone() {
    let stage = Stage::with_script("web-controls", "song.lua", &tone_at_dac("sine"));
    let wav = stage.dir.path().join("out.wav");
    let (mut run, _browser, page) =
        playing_with_page(&stage, &["--record", wav.to_str().unwrap()]).await;

    // The panel shows the manifest's range and unit and the value the block plays with.
    let freq = until(&page, "tone's freq control", FREQ).await;
    assert_eq!(
        freq,
        json!({"type": "range", "min": "0", "max": "20000", "step": "any", "value": "440",
               "shown": "440 Hz", "answer": "", "ok": null}),
        "sine's manifest: freq from 0 to 20000 Hz, no step declared"
    );
    let amp = page
        .execute(
            "const row = document.querySelector('[data-panel=tone] [data-param=amp]');
             const input = row.querySelector('input');
             return [input.min, input.max, input.step, input.value, row.querySelector('.value').textContent]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(amp, json!(["0", "1", "any", "0.3", "0.3"]));

    // Some 440 Hz in the recording first.
    run.wait_for("first sound at the DAC", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = pids(stage.dir.path());

    // Released at 660: applied as `/orchestra/set tone freq 660` would be, and logged.
    slide(&page, 660, None).await;
    assert_eq!(answered(&page).await, (true, "set tone.freq = 660".into()));
    let freq = until(
        &page,
        "the new value from the orchestra",
        &format!("const f = (() => {{ {FREQ} }})(); return f.shown === '660 Hz' ? f : null;"),
    )
    .await;
    assert_eq!(freq["value"], "660");
    let log = log_lines(&page).await;
    assert!(
        log.iter().any(|l| l == "reload: page set tone.freq = 660"),
        "{log:?}"
    );
    // freq is live: the running instance is told, not replaced.
    assert!(
        log.iter()
            .any(|l| l == "  = set tone.freq = 660 on localhost (live)"),
        "{log:?}"
    );
    let after = pids(stage.dir.path());
    assert_eq!(
        after["tone"], before["tone"],
        "a live set keeps the process"
    );
    let live_layer = std::fs::read_to_string(stage.dir.path().join(".orchestra/song.live.json"))
        .expect("the set is kept in the live layer");
    assert!(live_layer.contains("\"value\": 660"), "{live_layer}");

    // Beyond the manifest's range: refused with the reason, the slider back at what plays,
    // and the block untouched.
    slide(&page, 30000, Some(30000)).await;
    assert_eq!(
        answered(&page).await,
        (
            false,
            format!(
                "{}:1: block `tone`: param `freq` must be from 0 to 20000, not 30000",
                stage.script.display()
            )
        )
    );
    let freq = page.execute(FREQ, vec![]).await.unwrap();
    assert_eq!(
        (&freq["value"], &freq["shown"]),
        (&json!("660"), &json!("660 Hz"))
    );
    assert_eq!(pids(stage.dir.path()), after, "nothing was restarted");

    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(
        shots.join("web-controls.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // On a phone's screen: the panel is there, and nothing is wider than the screen.
    page.set_window_size(390, 844).await.unwrap();
    let fits = until(
        &page,
        "the phone-sized layout",
        "if (window.innerWidth > 600) return null;
         const panel = document.querySelector('[data-panel=tone]').getBoundingClientRect();
         const slider = document.querySelector('[data-panel=tone] [data-param=freq] input').getBoundingClientRect();
         return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth,
                 panel: [panel.left >= 0, panel.right <= window.innerWidth, panel.height > 0],
                 slider: [slider.height, slider.width > window.innerWidth / 2]};",
    )
    .await;
    assert!(
        fits["scroll"].as_u64() <= fits["inner"].as_u64(),
        "nothing overflows: {fits}"
    );
    assert_eq!(
        (&fits["panel"], &fits["slider"]),
        (&json!([true, true, true]), &json!([44, true])),
        "the panel fits the screen, its slider as tall as a finger needs (44 px) and wide: {fits}"
    );
    std::fs::write(
        shots.join("web-controls-phone.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // The tone stays at 660 Hz to the end, after 440 Hz before the change.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    run.signal(libc::SIGINT);
    let (code, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert_no_leftovers(&stage.server, stage.dir.path());
    page.close().await.unwrap();
    let first = tone_between(&wav, 0.2, 1.2);
    assert!(
        (first.frequency_hz - 440.0).abs() < 4.4,
        "440 Hz first: {first:?}"
    );
    let last = tail_tone(&wav, 1.0);
    assert!(
        (last.frequency_hz - 660.0).abs() < 6.6,
        "660 Hz at the end: {last:?}"
    );
    assert!(last.rms > 0.1, "at a healthy level: {last:?}");
}

/// Click into `field`, select what it holds and type `text` over it, then Enter.
async fn type_over(page: &Client, field: &fantoccini::elements::Element, text: &str) {
    field.click().await.unwrap();
    page.execute("document.activeElement.select()", vec![])
        .await
        .unwrap();
    let enter = char::from(fantoccini::key::Key::Enter);
    field.send_keys(&format!("{text}{enter}")).await.unwrap();
}

const CONTROLLED: &str = r#"local tone = block "tone" { module = "sine_osc" }
tone >> block "out" { module = "dac" }
block "ctl" { module = "osc_ctl", target = "tone", every = 1 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_params_choose_among_blocks_text_is_applied_on_enter_and_garbage_is_ignored() {
    use fantoccini::Locator;
    let stage = Stage::with_script("web-controls-text", "song.lua", CONTROLLED);
    let (run, _browser, page) = playing_with_page(&stage, &[]).await;

    let ctl = until(
        &page,
        "ctl's panel",
        "const panel = document.querySelector('[data-panel=ctl]');
         if (!panel) return null;
         return [...panel.querySelectorAll('[data-param]')].map(row => {
           const control = row.querySelector('input, select');
           return [row.dataset.param, row.dataset.kind, control.tagName.toLowerCase() + ':' + control.type,
                   control.value, [...control.querySelectorAll('option')].map(o => o.value)];
         });",
    )
    .await;
    assert_eq!(
        ctl,
        json!([
            ["every", "number", "input:range", "1", []],
            ["high", "number", "input:range", "660", []],
            ["low", "number", "input:range", "440", []],
            ["path", "osc_path", "input:text", "/freq", []],
            ["target", "block", "select:select-one", "tone", ["ctl", "out", "tone"]],
        ]),
        "osc_ctl's params, each with the control of its kind; a block param chooses among the orchestra's blocks"
    );
    let panels = page
        .execute(
            "return [...document.querySelectorAll('[data-panel]')].map(p => p.dataset.panel)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(panels, json!(["ctl", "tone"]), "the DAC has no params");
    let before = pids(stage.dir.path());

    // Typed and applied with Enter, as a musician does; not an OSC path, so refused.
    let path = page
        .find(Locator::Css("[data-panel=ctl] [data-param=path] input"))
        .await
        .unwrap();
    type_over(&page, &path, "freq").await;
    let answer = until(
        &page,
        "the answer to the path typed",
        "const row = document.querySelector('[data-panel=ctl] [data-param=path]');
         const answer = row.querySelector('.answer');
         return answer.dataset.ok === 'false' ? [answer.textContent, row.querySelector('input').value] : null;",
    )
    .await;
    assert_eq!(
        answer,
        json!([
            format!(
                "{}:3: block `ctl`: param `path` must be an OSC path like `/freq` (`/` then letters, digits, `_.~-`), not `freq`",
                stage.script.display()
            ),
            "/freq"
        ]),
        "the reason, and the field back at what plays"
    );
    assert_eq!(pids(stage.dir.path()), before, "nothing was restarted");

    // A good one goes through and stays.
    type_over(&page, &path, "/amp").await;
    let answer = until(
        &page,
        "the answer to the second path",
        "const row = document.querySelector('[data-panel=ctl] [data-param=path]');
         const answer = row.querySelector('.answer');
         return answer.dataset.ok === 'true' ? answer.textContent : null;",
    )
    .await;
    assert_eq!(answer, "set ctl.path = \"/amp\"");
    let live_layer =
        std::fs::read_to_string(stage.dir.path().join(".orchestra/song.live.json")).unwrap();
    assert!(live_layer.contains("\"value\": \"/amp\""), "{live_layer}");
    assert_ne!(pids(stage.dir.path())["ctl"], before["ctl"]);

    // What no control sends: garbage is ignored and the page stays connected; a set of a
    // block that does not exist is refused as `/orchestra/set` would refuse it.
    let playing = pids(stage.dir.path());
    page.execute(
        "window.answers = [];
         const shown = window.controlAnswer;
         window.controlAnswer = (answer) => { window.answers.push(answer); shown(answer); };
         socket.send('not json');
         socket.send(JSON.stringify({set: {block: 5, param: 'freq', value: 1}}));
         socket.send(JSON.stringify({set: {block: 'tone', param: 'freq', value: [1]}}));
         send({set: {block: 'tnoe', param: 'freq', value: 550}});",
        vec![],
    )
    .await
    .unwrap();
    let answers = until(
        &page,
        "the answer about `tnoe`",
        "return window.answers.length ? [window.answers,
                document.getElementById('connection').dataset.state] : null;",
    )
    .await;
    assert_eq!(
        answers,
        json!([[{"block": "tnoe", "param": "freq", "ok": false,
            "text": "set tnoe.freq = 550: no block `tnoe` (did you mean `tone`?)"}], "live"])
    );
    assert_eq!(pids(stage.dir.path()), playing, "nothing was restarted");

    stop_cleanly(run, libc::SIGINT, &stage.server, stage.dir.path());
    page.close().await.unwrap();
}
