//! A real browser for the tests of the page: Debian's headless Chromium driven through its
//! chromedriver, and the page's address as `orchestra run` prints it. Included by the page's
//! tests only (`#[path = "common/browser.rs"] mod browser;`), so that the other tests do not
//! build it.
#![allow(dead_code)]

use crate::common::Running;
use fantoccini::{Client, ClientBuilder};
use serde_json::json;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The address in the runtime's `web page on http://ADDR/…` line, and the whole URL.
pub fn page_url(run: &mut Running) -> (SocketAddr, String) {
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
