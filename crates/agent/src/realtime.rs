//! Whether this host gives its audio real-time scheduling: jackd asked for it (`-R`, its
//! default) and the kernel granted it to jackd's threads. Without it any busy process can
//! delay a JACK cycle into a click, so the agent says so once. And keeping the CPUs out of
//! deep idle states while the agent plays, where the system lets it.

use std::path::Path;

/// Why the host's JACK server runs without real-time scheduling, or `None` when it has it
/// (or when its process cannot be found to tell). `pid` is the server's jackd when known.
pub fn lacking(server: &str, server_says_realtime: bool, pid: Option<u32>) -> Option<String> {
    const CLICKS: &str = "any busy process can delay its cycles into clicks";
    if !server_says_realtime {
        return Some(format!(
            "the JACK server `{server}` runs without real-time scheduling (started without -R); {CLICKS}"
        ));
    }
    let pid = pid.or_else(|| find_jackd(server))?;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut realtime = false;
    for thread in threads.flatten() {
        if let Some(policy) = policy(&thread.path().join("stat")) {
            // SCHED_FIFO (1) or SCHED_RR (2): the driver thread has one when granted.
            realtime |= policy == 1 || policy == 2;
        }
    }
    (!realtime).then(|| {
        format!(
            "the JACK server `{server}` asked for real-time scheduling and the system refused it (it needs root, CAP_SYS_NICE or an rtprio limit, e.g. the `audio` group); {CLICKS}"
        )
    })
}

/// A thread's scheduling policy: field 41 of its `stat` (the fields after the command name,
/// which may hold spaces, start at field 3).
fn policy(stat: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(stat).ok()?;
    let (_, rest) = text.rsplit_once(") ")?;
    rest.split_whitespace().nth(41 - 3)?.parse().ok()
}

/// The jackd serving `server` (named with `-n`/`--name`, or none for `default`).
fn find_jackd(server: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_jackd = args
            .first()
            .is_some_and(|a| Path::new(a).file_name().is_some_and(|f| f == "jackd"));
        if is_jackd && server_of(&args[1..]) == server {
            return Some(pid);
        }
    }
    None
}

/// The server name jackd's arguments give (before the driver's own, after `-d`).
fn server_of(args: &[String]) -> String {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-d" => break,
            "-n" | "--name" => return it.next().cloned().unwrap_or_default(),
            a if a.starts_with("--name=") => return a["--name=".len()..].to_string(),
            a if a.starts_with("-n") && a.len() > 2 => return a[2..].to_string(),
            _ => {}
        }
    }
    "default".to_string()
}

/// Ask the kernel to keep every CPU out of idle states slower to leave than 0 µs (a PM QoS
/// request on `/dev/cpu_dma_latency`), for as long as the returned file stays open. An idle
/// CPU that halts (a VM's vCPU above all) wakes late for the next JACK cycle: on the lab,
/// with nothing else running, that alone cost a period several times a minute. Needs root
/// (or write access to the device); `Err` says why not.
pub fn keep_cpus_awake() -> Result<std::fs::File, String> {
    use std::io::Write;
    let path = "/dev/cpu_dma_latency";
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    file.write_all(&0i32.to_ne_bytes())
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_server_name_comes_from_jackds_own_arguments() {
        assert_eq!(server_of(&args("-n co-x -d dummy -r 48000")), "co-x");
        assert_eq!(server_of(&args("--name=lab -R -d dummy")), "lab");
        assert_eq!(server_of(&args("-R -d alsa -n hw:1")), "default");
    }

    #[test]
    fn a_server_started_without_realtime_is_said_so() {
        let why = lacking("s", false, None).expect("said");
        assert!(why.contains("without -R"), "{why}");
    }

    #[test]
    fn this_process_runs_without_realtime_scheduling() {
        let why = lacking("s", true, Some(std::process::id())).expect("said");
        assert!(why.contains("refused"), "{why}");
    }
}
