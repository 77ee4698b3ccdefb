//! The host's JACK server: find the one that answers, or start `jackd -d dummy` detached (pid
//! file in the work dir, so a later agent knows it is ours to stop).

use crate::agent::protocol::JackSettings;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The server libjack talks to: `$JACK_DEFAULT_SERVER`, else `default`.
pub fn server_name() -> String {
    std::env::var("JACK_DEFAULT_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Whether a JACK server answers (without starting one).
pub fn is_running() -> bool {
    jack::Client::new("orchestra-probe", jack::ClientOptions::NO_START_SERVER).is_ok()
}

fn pid_file(workdir: &Path) -> std::path::PathBuf {
    workdir.join("jackd.pid")
}

/// jackd's arguments: server name, backend (dummy unless the host names one), its device,
/// the orchestra's rate and period.
pub fn jackd_args(server: &str, jack: &JackSettings) -> Vec<String> {
    let driver = jack.driver.as_deref().unwrap_or("dummy");
    let mut args: Vec<String> = vec!["-n".into(), server.into(), "-d".into(), driver.into()];
    if let Some(device) = &jack.device {
        args.extend(["-d".into(), device.clone()]);
    }
    args.extend([
        "-r".into(),
        jack.rate.to_string(),
        "-p".into(),
        jack.period.to_string(),
    ]);
    if driver == "dummy" {
        // Two capture and two playback ports, like a stereo sound card.
        args.extend(["-C", "2", "-P", "2"].map(String::from));
    }
    args
}

/// Start jackd (the dummy driver unless the host says otherwise) with the orchestra's rate
/// and period, and wait until it answers.
pub fn start(workdir: &Path, jack: &JackSettings) -> Result<u32> {
    let log = std::fs::File::create(workdir.join("jackd.log")).context("jackd.log")?;
    let mut command = Command::new("jackd");
    command.args(jackd_args(&server_name(), jack));
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    crate::agent::supervisor::detach(&mut command);
    let mut child = command
        .spawn()
        .context("cannot start jackd (is jackd2 installed? scripts/setup.sh installs it)")?;
    let pid = child.id();
    std::fs::write(pid_file(workdir), pid.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let _ = std::fs::remove_file(pid_file(workdir));
            let tail = std::fs::read_to_string(workdir.join("jackd.log")).unwrap_or_default();
            bail!(
                "jackd exited ({status}): {}",
                tail.lines().last().unwrap_or("")
            );
        }
        if is_running() {
            // The child handle is dropped, not waited: jackd outlives this agent by design.
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "jackd did not answer within 10 s (see {})",
        workdir.join("jackd.log").display()
    )
}

/// Stop the jackd we started, if the pid file says there is one.
pub fn stop_ours(workdir: &Path) -> Result<bool> {
    let path = pid_file(workdir);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(false);
    };
    let pid: i32 = text.trim().parse().context("jackd.pid")?;
    if crate::agent::supervisor::process_alive(pid as u32)
        && crate::agent::supervisor::command_name(pid as u32).as_deref() == Some("jackd")
    {
        crate::agent::supervisor::terminate_group(pid as u32, Duration::from_secs(3));
    }
    let _ = std::fs::remove_file(path);
    Ok(true)
}

/// Whether this work dir records a jackd that we started.
pub fn started_by_us(workdir: &Path) -> bool {
    pid_file(workdir).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(driver: Option<&str>, device: Option<&str>) -> JackSettings {
        JackSettings {
            rate: 44100,
            period: 128,
            start_if_missing: true,
            driver: driver.map(String::from),
            device: device.map(String::from),
        }
    }

    #[test]
    fn dummy_by_default_and_a_sound_card_when_the_host_says_so() {
        assert_eq!(
            jackd_args("default", &settings(None, None)).join(" "),
            "-n default -d dummy -r 44100 -p 128 -C 2 -P 2"
        );
        assert_eq!(
            jackd_args("s1", &settings(Some("alsa"), Some("hw:1"))).join(" "),
            "-n s1 -d alsa -d hw:1 -r 44100 -p 128"
        );
    }
}
