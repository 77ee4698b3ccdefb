//! The watcher: tells the control loop when a file the orchestra is made of changed — the
//! script, every file it `require`d, the hosts file, and the module folders in use.
//!
//! Files are watched through their folder, not by themselves: editors that save by writing a
//! temporary file and renaming it over the old one (vim, most IDEs) replace the inode a
//! per-file watch would follow, and a file deleted and created again would be lost. Events are
//! debounced (one burst of writes is one change) and filtered to the paths of interest.

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Long enough to merge the writes of one save (truncate + write + rename arrive within a
/// millisecond or two), short enough not to be felt: a connection edit is applied in tens of
/// milliseconds.
pub const DEBOUNCE: Duration = Duration::from_millis(15);

/// Some watched files changed (absolute paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub paths: Vec<PathBuf>,
}

/// What the control loop cares about: single files, and folders with all they contain.
#[derive(Debug, Default)]
struct Interest {
    files: BTreeSet<PathBuf>,
    trees: BTreeSet<PathBuf>,
}

impl Interest {
    fn wants(&self, path: &Path) -> bool {
        self.files.contains(path) || self.trees.iter().any(|t| path.starts_with(t))
    }
}

pub struct Watcher {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    interest: Arc<Mutex<Interest>>,
    /// Folders watched now, and how (so `set` only adds and removes the difference).
    watched: BTreeSet<(PathBuf, bool)>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {error}")]
pub struct WatchError {
    path: String,
    error: String,
}

/// The path with its folder resolved (symlinks, `..`), the file name kept: the file itself may
/// be missing for a moment while an editor replaces it.
fn normalize(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(absolute.clone()),
        _ => absolute,
    }
}

impl Watcher {
    /// A watcher that sends each debounced change of interest to `changes`.
    pub fn new(
        debounce: Duration,
        changes: UnboundedSender<Change>,
    ) -> Result<Watcher, WatchError> {
        let interest = Arc::new(Mutex::new(Interest::default()));
        let filter = interest.clone();
        let handler = move |result: DebounceEventResult| {
            let Ok(events) = result else {
                return;
            };
            let interest = filter.lock().expect("lock");
            let mut paths: Vec<PathBuf> = events
                .iter()
                .filter(|e| !e.kind.is_access() && !e.kind.is_other())
                .flat_map(|e| e.paths.iter())
                .filter(|p| interest.wants(p))
                .cloned()
                .collect();
            paths.sort();
            paths.dedup();
            if !paths.is_empty() {
                let _ = changes.send(Change { paths });
            }
        };
        let debouncer = new_debouncer(debounce, None, handler).map_err(|e| WatchError {
            path: "(watcher)".into(),
            error: e.to_string(),
        })?;
        Ok(Watcher {
            debouncer,
            interest,
            watched: BTreeSet::new(),
        })
    }

    /// Watch exactly these files and folders (the set changes when the script `require`s
    /// another file or names another hosts file).
    pub fn set(&mut self, files: &[PathBuf], trees: &[PathBuf]) -> Result<(), WatchError> {
        let files: BTreeSet<PathBuf> = files.iter().map(|f| normalize(f)).collect();
        let trees: BTreeSet<PathBuf> = trees
            .iter()
            .map(|t| std::fs::canonicalize(t).unwrap_or_else(|_| normalize(t)))
            .collect();
        let mut wanted: BTreeSet<(PathBuf, bool)> = files
            .iter()
            .filter_map(|f| f.parent().map(|p| (p.to_path_buf(), false)))
            .collect();
        wanted.extend(trees.iter().map(|t| (t.clone(), true)));
        for (dir, recursive) in wanted.difference(&self.watched) {
            let mode = if *recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            self.debouncer.watch(dir, mode).map_err(|e| WatchError {
                path: dir.display().to_string(),
                error: e.to_string(),
            })?;
        }
        for (dir, _) in self.watched.difference(&wanted) {
            let _ = self.debouncer.unwatch(dir);
        }
        self.watched = wanted;
        *self.interest.lock().expect("lock") = Interest { files, trees };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    async fn next(rx: &mut UnboundedReceiver<Change>) -> Option<Change> {
        tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Nothing more arrives within a while.
    async fn quiet(rx: &mut UnboundedReceiver<Change>) -> bool {
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    }

    fn setup() -> (tempfile::TempDir, Watcher, UnboundedReceiver<Change>) {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = unbounded_channel();
        let watcher = Watcher::new(DEBOUNCE, tx).unwrap();
        (dir, watcher, rx)
    }

    #[tokio::test]
    async fn a_write_in_place_is_one_change() {
        let (dir, mut watcher, mut rx) = setup();
        let script = dir.path().join("song.lua");
        std::fs::write(&script, "a").unwrap();
        watcher.set(std::slice::from_ref(&script), &[]).unwrap();
        std::fs::write(&script, "b").unwrap();
        let change = next(&mut rx).await.expect("a change");
        assert_eq!(change.paths, vec![normalize(&script)]);
        assert!(quiet(&mut rx).await, "one save, one change");
    }

    #[tokio::test]
    async fn a_save_by_rename_is_seen_and_the_file_stays_watched() {
        let (dir, mut watcher, mut rx) = setup();
        let script = dir.path().join("song.lua");
        std::fs::write(&script, "a").unwrap();
        watcher.set(std::slice::from_ref(&script), &[]).unwrap();
        for round in 0..3 {
            let tmp = dir.path().join(format!(".song.lua.swp{round}"));
            std::fs::write(&tmp, format!("v{round}")).unwrap();
            std::fs::rename(&tmp, &script).unwrap();
            let change = next(&mut rx).await.expect("a change per save");
            assert!(change.paths.contains(&normalize(&script)), "{change:?}");
        }
    }

    #[tokio::test]
    async fn a_file_deleted_and_created_again_is_still_watched() {
        let (dir, mut watcher, mut rx) = setup();
        let script = dir.path().join("song.lua");
        std::fs::write(&script, "a").unwrap();
        watcher.set(std::slice::from_ref(&script), &[]).unwrap();
        std::fs::remove_file(&script).unwrap();
        assert!(next(&mut rx).await.is_some(), "the removal");
        std::fs::write(&script, "b").unwrap();
        assert!(next(&mut rx).await.is_some(), "the new file");
        std::fs::write(&script, "c").unwrap();
        assert!(next(&mut rx).await.is_some(), "a later edit");
    }

    #[tokio::test]
    async fn other_files_in_the_folder_are_ignored() {
        let (dir, mut watcher, mut rx) = setup();
        let script = dir.path().join("song.lua");
        std::fs::write(&script, "a").unwrap();
        watcher.set(std::slice::from_ref(&script), &[]).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        std::fs::create_dir(dir.path().join(".orchestra")).unwrap();
        std::fs::write(dir.path().join(".orchestra/state.json"), "{}").unwrap();
        assert!(quiet(&mut rx).await);
    }

    #[tokio::test]
    async fn anything_inside_a_module_folder_counts() {
        let (dir, mut watcher, mut rx) = setup();
        let modules = dir.path().join("modules");
        std::fs::create_dir_all(modules.join("buzz")).unwrap();
        std::fs::write(modules.join("buzz/manifest.json"), "{}").unwrap();
        watcher.set(&[], std::slice::from_ref(&modules)).unwrap();
        std::fs::write(modules.join("buzz/buzz.orc"), "instr 1").unwrap();
        let change = next(&mut rx).await.expect("a change");
        assert!(change.paths[0].ends_with("buzz/buzz.orc"), "{change:?}");
    }

    #[tokio::test]
    async fn a_file_no_longer_required_is_no_longer_watched() {
        let (dir, mut watcher, mut rx) = setup();
        let script = dir.path().join("song.lua");
        let lib = dir.path().join("lib.lua");
        std::fs::write(&script, "a").unwrap();
        std::fs::write(&lib, "a").unwrap();
        watcher.set(&[script.clone(), lib.clone()], &[]).unwrap();
        std::fs::write(&lib, "b").unwrap();
        assert!(next(&mut rx).await.is_some());
        watcher.set(std::slice::from_ref(&script), &[]).unwrap();
        std::fs::write(&lib, "c").unwrap();
        assert!(quiet(&mut rx).await);
    }
}
