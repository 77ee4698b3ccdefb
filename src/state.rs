//! The last applied state, persisted atomically (temp file + rename) in `.orchestra/` beside
//! the script, so a restarted runtime (or `orchestra down`) knows what plays; and per host a
//! record of where it is (`hosts/<host>/host.json`), so `down` can reach the hosts even when
//! the state file is lost.

use crate::deploy::Deployment;
use crate::model::Host;
use crate::placement::Placement;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedState {
    pub deployment: Deployment,
    pub placement: Placement,
}

/// `--state-dir`, else `.orchestra/` beside the script.
pub fn state_dir(script: &Path, explicit: Option<&Path>) -> PathBuf {
    let dir = match explicit {
        Some(d) => d.to_path_buf(),
        None => script
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .join(".orchestra"),
    };
    std::path::absolute(&dir).unwrap_or(dir)
}

/// Where the state of `orchestra` is kept in `dir`.
pub fn state_file(dir: &Path, orchestra: &str) -> PathBuf {
    dir.join(format!("{orchestra}.state.json"))
}

pub fn load(dir: &Path, orchestra: &str) -> Result<Option<AppliedState>> {
    let path = state_file(dir, orchestra);
    match std::fs::read(&path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{}: unreadable state", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| path.display().to_string()),
    }
}

/// Where the round trips measured while `orchestra` last played are kept in `dir`: unlike
/// the state, kept after teardown (the network is still there for the next plan).
pub fn round_trips_file(dir: &Path, orchestra: &str) -> PathBuf {
    dir.join(format!("{orchestra}.round-trips.json"))
}

/// One measured round trip, as kept on disk.
#[derive(Serialize, Deserialize)]
struct RoundTrip {
    from: String,
    to: String,
    ms: f64,
}

/// The round trips last measured (none when the file is missing or unreadable: they only
/// refine an estimate).
pub fn load_round_trips(dir: &Path, orchestra: &str) -> crate::latency::RoundTrips {
    std::fs::read(round_trips_file(dir, orchestra))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Vec<RoundTrip>>(&bytes).ok())
        .into_iter()
        .flatten()
        .map(|r| ((r.from, r.to), r.ms))
        .collect()
}

pub fn save_round_trips(
    dir: &Path,
    orchestra: &str,
    round_trips: &crate::latency::RoundTrips,
) -> Result<()> {
    let list: Vec<RoundTrip> = round_trips
        .iter()
        .map(|((from, to), ms)| RoundTrip {
            from: from.clone(),
            to: to.clone(),
            ms: *ms,
        })
        .collect();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomically(
        &round_trips_file(dir, orchestra),
        &serde_json::to_vec_pretty(&list)?,
    )
}

pub fn save(dir: &Path, state: &AppliedState) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let hosts: Vec<Host> = state
        .deployment
        .hosts
        .values()
        .map(|h| h.host.clone())
        .collect();
    record_hosts(dir, &hosts)?;
    let path = state_file(dir, &state.deployment.orchestra);
    write_atomically(&path, &serde_json::to_vec_pretty(state)?)
}

/// Note where these hosts are before anything starts on them, so `down` finds them even if
/// the controller dies before it saves any state.
pub fn record_hosts(dir: &Path, hosts: &[Host]) -> Result<()> {
    for host in hosts {
        write_atomically(
            &host_record(dir, &host.name),
            &serde_json::to_vec_pretty(host)?,
        )?;
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Forget the applied state (everything it named has stopped), host records included.
pub fn clear(dir: &Path, orchestra: &str) -> Result<()> {
    let path = state_file(dir, orchestra);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", path.display()));
        }
        _ => {}
    }
    for host in recorded_hosts(dir) {
        let _ = std::fs::remove_file(host_record(dir, &host.name));
    }
    Ok(())
}

fn host_record(dir: &Path, host: &str) -> PathBuf {
    local_workdir(dir, host).join("host.json")
}

/// The hosts this state dir knows of without the state file: recorded hosts
/// (`hosts/<host>/host.json`), and local agents' work dirs (`hosts/<host>/` holding instances
/// or a jackd pid file), which only local hosts have.
pub fn recorded_hosts(dir: &Path) -> Vec<Host> {
    let Ok(entries) = std::fs::read_dir(dir.join("hosts")) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let worked = path.join("blocks").is_dir() || path.join("jackd.pid").exists();
        let recorded = std::fs::read(path.join("host.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Host>(&bytes).ok());
        match recorded {
            Some(host) if host.name == name => hosts.push(host),
            _ if worked => hosts.push(Host {
                name,
                ..Host::localhost()
            }),
            _ => {}
        }
    }
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    hosts
}

/// Where a host's agent keeps its instances when it runs on this machine.
pub fn local_workdir(dir: &Path, host: &str) -> PathBuf {
    dir.join("hosts").join(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::HostDeployment;

    fn applied(hosts: &[Host]) -> AppliedState {
        let mut state = AppliedState::default();
        state.deployment.orchestra = "song".into();
        for host in hosts {
            state.deployment.hosts.insert(
                host.name.clone(),
                HostDeployment {
                    host: host.clone(),
                    processes: Default::default(),
                    edges: Default::default(),
                },
            );
        }
        state
    }

    #[test]
    fn the_hosts_are_known_without_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Host {
            name: "h1".into(),
            address: "10.0.0.4".into(),
            local: false,
            ..Host::localhost()
        };
        save(dir.path(), &applied(std::slice::from_ref(&remote))).unwrap();
        // A local agent's work dir that no record names (a controller killed early).
        std::fs::create_dir_all(local_workdir(dir.path(), "localhost").join("blocks")).unwrap();
        std::fs::remove_file(dir.path().join("song.state.json")).unwrap();

        let known = recorded_hosts(dir.path());
        let names: Vec<(&str, &str, bool)> = known
            .iter()
            .map(|h| (h.name.as_str(), h.address.as_str(), h.local))
            .collect();
        assert_eq!(
            names,
            [("h1", "10.0.0.4", false), ("localhost", "127.0.0.1", true)]
        );

        clear(dir.path(), "song").unwrap();
        assert_eq!(
            recorded_hosts(dir.path()).len(),
            1,
            "only the work dir stays"
        );
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "").unwrap();
        let error = format!("{:#}", save(&not_a_dir, &applied(&[])).unwrap_err());
        assert!(error.contains(&not_a_dir.display().to_string()), "{error}");
        // A state file that cannot be removed (here: a directory in its place).
        let state = dir.path().join("song.state.json");
        std::fs::create_dir_all(state.join("x")).unwrap();
        let error = format!("{:#}", clear(dir.path(), "song").unwrap_err());
        assert!(error.contains(&state.display().to_string()), "{error}");
    }
}
