//! The host's JACK server: find the one that answers, or start `jackd -d dummy` detached (pid
//! file in the work dir, so a later agent knows it is ours to stop).

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

/// Start `jackd -d dummy` with the orchestra's rate and period and wait until it answers.
pub fn start(workdir: &Path, rate: u32, period: u32) -> Result<u32> {
    let log = std::fs::File::create(workdir.join("jackd.log")).context("jackd.log")?;
    let mut command = Command::new("jackd");
    command.args(["-n", &server_name()]);
    command.args([
        "-d",
        "dummy",
        "-r",
        &rate.to_string(),
        "-p",
        &period.to_string(),
        "-C",
        "2",
        "-P",
        "2",
    ]);
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
