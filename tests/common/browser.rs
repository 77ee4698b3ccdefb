//! A real browser for the tests of the page: Debian's headless Chromium driven through its
//! chromedriver. Included by the page's tests only (`#[path = "common/browser.rs"] mod
//! browser;`), so that the other tests do not build it. What the page's meters read and what its player hears are read here too.
#![allow(dead_code)]

use fantoccini::{Client, ClientBuilder};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A chromedriver of this test's own (a free port, its own process group) and the headless
/// Chromium it drives (a fresh profile); both go when this is dropped, even on a panic.
pub struct Browser {
    driver: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver (Debian's chromium-driver) is installed")
        };
        let browser = Browser {
            driver,
            port,
            profile: tempfile::tempdir().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        browser
    }

    pub async fn open(&self, url: &str) -> Client {
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,900",
            &format!("--user-data-dir={}", self.profile.path().display()),
        ];
        let capabilities = json!({
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session");
        client.goto(url).await.unwrap();
        client
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group is chromedriver and the browsers it started.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
        // Whatever left the group still names its profile.
        let profile = self.profile.path().display().to_string();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&profile) {
                if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// The lines of the page's log, as shown.
pub async fn log_lines(page: &Client) -> Vec<String> {
    let value = page
        .execute(
            "return [...document.querySelectorAll('#log li')].map(l => l.lastChild.textContent)",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
}

/// What the page names the DAC's meter and listen button by.
pub const DAC: &str = "system:playback";

/// block → (peak, rms) of the meters the page draws on `host`, those measured so far.
pub async fn meters(page: &Client, host: &str) -> BTreeMap<String, (f64, f64)> {
    let value = page
        .execute(
            "return [...document.querySelectorAll(`[data-host='${arguments[0]}'] [data-meter]`)]
               .filter(m => m.dataset.peak !== '')
               .map(m => [m.dataset.meter, Number(m.dataset.peak), Number(m.dataset.rms)])",
            vec![json!(host)],
        )
        .await
        .unwrap();
    serde_json::from_value::<Vec<(String, f64, f64)>>(value)
        .unwrap()
        .into_iter()
        .map(|(block, peak, rms)| (block, (peak, rms)))
        .collect()
}

/// Wait until the meter of `block` on `host` satisfies `ok` of its (peak, RMS); the reading.
pub async fn meter_until(
    page: &Client,
    host: &str,
    block: &str,
    ok: impl Fn((f64, f64)) -> bool,
) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = meters(page, host).await;
        if let Some(level) = now.get(block).filter(|level| ok(**level)) {
            return *level;
        }
        assert!(
            Instant::now() < deadline,
            "the meter of {block} on {host} never read as expected: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the page's player says: (target, samples decoded, the loudest frequency heard, its
/// delay behind the synth in ms).
pub async fn listening(page: &Client) -> Option<(String, u64, Option<f64>, Option<f64>)> {
    let value = page
        .execute("return window.listening()", vec![])
        .await
        .unwrap();
    if value.is_null() {
        return None;
    }
    Some((
        value["target"].as_str().unwrap_or_default().to_string(),
        value["samples"].as_u64().unwrap_or(0),
        value["peakHz"].as_f64(),
        value["delayMs"].as_f64(),
    ))
}

/// Wait until the page has decoded a second of `target`'s sound with its spectrum settled on
/// 440 Hz: (the frequency heard, the delay behind the synth in ms).
pub async fn hears_440(page: &Client, target: &str) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = listening(page).await;
        if let Some((listened, samples, Some(hz), Some(delay))) = &now {
            if listened == target && *samples >= 48_000 && (hz - 440.0).abs() < 12.0 {
                return (*hz, *delay);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the page never heard 440 Hz from {target}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Click the listen button `button` and wait until the page hears `target` at 440 Hz (see
/// [`hears_440`]); says what it heard and how far behind the synth.
pub async fn listen_for_440(page: &Client, button: &str, target: &str) {
    // A WebDriver click (a user gesture: the page may start its audio only on one). The page
    // redraws a block's region as the orchestra changes, and a button found first may be gone
    // by the click (StaleElementReference): found again and clicked again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let clicked = match page.find(fantoccini::Locator::Css(button)).await {
            Ok(element) => element.click().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match clicked {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "cannot click {button}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (hz, delay) = hears_440(page, target).await;
    eprintln!("listening to {target}: {hz:.1} Hz heard, {delay:.0} ms behind the synth");
}
