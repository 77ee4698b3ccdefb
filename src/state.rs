//! The last applied state, persisted atomically (temp file + rename) in `.orchestra/` beside
//! the script, so a restarted runtime (or `orchestra down`) knows what plays.

use crate::deploy::Deployment;
use crate::placement::Placement;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

fn state_file(dir: &Path, orchestra: &str) -> PathBuf {
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

pub fn save(dir: &Path, state: &AppliedState) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let path = state_file(dir, &state.deployment.orchestra);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

pub fn clear(dir: &Path, orchestra: &str) -> Result<()> {
    match std::fs::remove_file(state_file(dir, orchestra)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Where a host's agent keeps its instances when it runs on this machine.
pub fn local_workdir(dir: &Path, host: &str) -> PathBuf {
    dir.join("hosts").join(host)
}
