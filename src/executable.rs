//! This very executable, which also runs as the agent on each host and as the evaluation
//! worker of the script stage.

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
