//! The watcher: tells the control loop when a file the orchestra is made of changed — the
//! script, every file it `require`d, the hosts file, and the module folders in use.
//!
//! Files are watched through their folder, not by themselves: editors that save by writing a
//! temporary file and renaming it over the old one (vim, most IDEs) replace the inode a
//! per-file watch would follow, and a file deleted and created again would be lost. Events are
//! debounced (one burst of writes is one change) and filtered to the paths of interest.
//!
//! A save that is plainly whole is sent at once, ahead of the debounce: a file closed after
//! writing (one write in place) or renamed into place (an editor's temporary file), when it
//! is not empty. The debounced change that follows is sent only when the file differs from
//! what was sent, so one save is still one change; the debounce covers every other way of
//! writing (a file truncated, closed and written again, say).

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher as _};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Long enough to merge the writes of one save (truncate + write + rename arrive within a
/// millisecond or two), short enough not to be felt: a connection edit is applied in tens of
/// milliseconds. A save that is plainly whole does not wait for it (see the module's doc).
pub const DEBOUNCE: Duration = Duration::from_millis(15);

/// What was last sent of each file: a digest of its contents (`None`: it was missing).
type Sent = Arc<Mutex<HashMap<PathBuf, Option<u64>>>>;

/// A digest of the file's contents, `None` when it cannot be read.
fn digest(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
}

/// The paths a raw event says are whole now: a file closed after writing, or renamed into
/// place.
fn whole(event: &notify::Event) -> &[PathBuf] {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => &event.paths,
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            event.paths.get(1..).unwrap_or(&[])
        }
        _ => &[],
    }
}

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
    /// The same folders, undebounced: for the saves sent at once.
    leading: notify::RecommendedWatcher,
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
        let sent: Sent = Arc::default();
        let (filter, sent_before, leading_changes) =
            (interest.clone(), sent.clone(), changes.clone());
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
            // Not again what the leading edge sent already.
            let mut sent = sent_before.lock().expect("lock");
            paths.retain(|path| {
                let now = digest(path);
                sent.insert(path.clone(), now) != Some(now)
            });
            if !paths.is_empty() {
                let _ = changes.send(Change { paths });
            }
        };
        let debouncer = new_debouncer(debounce, None, handler).map_err(|e| WatchError {
            path: "(watcher)".into(),
            error: e.to_string(),
        })?;
        let filter = interest.clone();
        let leading = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            let Ok(event) = result else {
                return;
            };
            let interest = filter.lock().expect("lock");
            for path in whole(&event).iter().filter(|p| interest.wants(p)) {
                // An empty file may be the first half of a save: the debounce decides.
                if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
                    continue;
                }
                let now = digest(path);
                if sent.lock().expect("lock").insert(path.clone(), now) != Some(now) {
                    let paths = vec![path.clone()];
                    let _ = leading_changes.send(Change { paths });
                }
            }
        })
        .map_err(|e| WatchError {
            path: "(watcher)".into(),
            error: e.to_string(),
        })?;
        Ok(Watcher {
            debouncer,
            leading,
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
            let failed = |e: notify::Error| WatchError {
                path: dir.display().to_string(),
                error: e.to_string(),
            };
            self.debouncer.watch(dir, mode).map_err(failed)?;
            self.leading.watch(dir, mode).map_err(failed)?;
        }
        for (dir, _) in self.watched.difference(&wanted) {
            let _ = self.debouncer.unwatch(dir);
            let _ = self.leading.unwatch(dir);
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
    async fn a_whole_save_is_sent_before_the_debounce_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = unbounded_channel();
        // A debounce far longer than the waits below: what arrives came from the leading
        // edge.
        let mut watcher = Watcher::new(Duration::from_secs(30), tx).unwrap();
        let script = dir.path().join("song.lua");
        std::fs::write(&script, "a").unwrap();
        watcher.set(std::slice::from_ref(&script), &[]).unwrap();
        std::fs::write(&script, "b").unwrap();
        let change = next(&mut rx).await.expect("written in place, sent at once");
        assert_eq!(change.paths, vec![normalize(&script)]);
        let tmp = dir.path().join(".song.lua.swp");
        std::fs::write(&tmp, "c").unwrap();
        std::fs::rename(&tmp, &script).unwrap();
        let change = next(&mut rx)
            .await
            .expect("renamed into place, sent at once");
        assert_eq!(change.paths, vec![normalize(&script)]);
        // Emptied: maybe the first half of a save, so it waits for the debounce.
        std::fs::write(&script, "").unwrap();
        assert!(quiet(&mut rx).await, "an empty file waits");
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
