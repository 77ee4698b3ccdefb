//! The programs of this package: `orchestra` itself (which also runs as the evaluation worker
//! of the script stage) and `orchestra-agent`, built beside it, which runs on each host.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The `orchestra` binary: the current executable, or inside `cargo test` (where that is the
/// test harness) the built one.
pub fn path() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the orchestra executable")?;
    if exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("orchestra"))
    {
        return Ok(exe);
    }
    if let Ok(path) = std::env::var("CARGO_BIN_EXE_orchestra") {
        return Ok(path.into());
    }
    Ok(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/orchestra"))
}

/// The `orchestra-agent` binary: beside the `orchestra` one (cargo builds both into the same
/// directory, and an install puts them side by side).
pub fn agent() -> Result<PathBuf> {
    let orchestra = path()?;
    let agent = orchestra.with_file_name("orchestra-agent");
    if !agent.is_file() {
        anyhow::bail!(
            "cannot find the agent: {} is missing (it is built with orchestra: `cargo build`)",
            agent.display()
        );
    }
    Ok(agent)
}
