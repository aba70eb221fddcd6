//! What triggers a reload: a debounced change under the rule or script
//! folders, or SIGHUP.
//!
//! Folders are watched, not files, and recursively, because editors save by
//! writing a temporary file and renaming it over the original. A rule path
//! that is a file is watched through its folder; a folder that does not exist
//! yet (no `scripts/` at start) through its nearest existing ancestor, until
//! a reload finds it. Reading files raises access events, which are ignored,
//! as are hidden files, backups (`x~`) and swap files, so a reload never
//! triggers itself.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify_debouncer_full::notify::{self, EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{
    DebounceEventResult, DebouncedEvent, Debouncer, RecommendedCache, new_debouncer,
};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::RuleSetHandle;
use crate::rules::RuleSources;

/// The rule and script folders and SIGHUP, watched from the moment this is
/// made: the daemon makes it before it loads the rules, so that a file
/// changed while they load is seen (it costs at most one extra reload).
pub struct Watching {
    changed: Arc<Notify>,
    watcher: Option<FolderWatcher>,
    hangup: Option<Signal>,
}

impl Watching {
    /// Starts watching `sources`; a burst of changes within `debounce`
    /// makes one reload. If the folders cannot be watched (inotify
    /// limits), SIGHUP still works.
    pub fn start(sources: &RuleSources, debounce: Duration) -> Watching {
        let hangup = match signal(SignalKind::hangup()) {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::warn!(%error, "cannot handle SIGHUP: reloads follow file changes only");
                None
            }
        };
        let changed = Arc::new(Notify::new());
        let watcher = match FolderWatcher::start(sources, debounce, changed.clone()) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(%error, "cannot watch the rule folders: reload with SIGHUP");
                None
            }
        };
        Watching {
            changed,
            watcher,
            hangup,
        }
    }
}

/// Reloads `handle` on every change `watching` sees, until `shutdown`.
pub async fn reload_on_change(
    handle: Arc<RuleSetHandle>,
    watching: Watching,
    shutdown: CancellationToken,
) {
    let Watching {
        changed,
        mut watcher,
        mut hangup,
    } = watching;
    handle.set_watching(watcher.is_some());
    loop {
        let reason = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changed.notified() => "files changed",
            Some(()) = next_hangup(&mut hangup) => "SIGHUP",
        };
        tracing::info!(reason, "reloading rules");
        let reloader = handle.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || reloader.reload()).await {
            tracing::error!(%error, "the reload task failed");
        }
        // Changes made while a folder was not watched yet need one more look.
        if let Some(watcher) = watcher.as_mut()
            && watcher.refresh(handle.sources())
        {
            changed.notify_one();
        }
    }
    handle.set_watching(false);
}

async fn next_hangup(hangup: &mut Option<Signal>) -> Option<()> {
    match hangup {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

/// The debounced watcher and the roots it watches.
struct FolderWatcher {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    roots: Vec<(PathBuf, RecursiveMode)>,
    /// The roots as absolute paths, as events name them.
    absolute_roots: Arc<Mutex<Vec<PathBuf>>>,
    /// Set when a watched root itself was removed: its watch is gone and must be made again.
    root_removed: Arc<AtomicBool>,
}

impl FolderWatcher {
    fn start(
        sources: &RuleSources,
        debounce: Duration,
        changed: Arc<Notify>,
    ) -> notify::Result<FolderWatcher> {
        let root_removed = Arc::new(AtomicBool::new(false));
        let absolute_roots = Arc::new(Mutex::new(Vec::new()));
        let (removed, roots) = (root_removed.clone(), absolute_roots.clone());
        let handler = move |result: DebounceEventResult| match result {
            Ok(events) => {
                if events.iter().any(|e| removes_a_root(e, &roots)) {
                    removed.store(true, Ordering::Relaxed);
                }
                if events.iter().any(is_relevant) {
                    changed.notify_one();
                }
            }
            Err(errors) => {
                for error in errors {
                    tracing::warn!(%error, "watching the rule folders");
                }
                changed.notify_one();
            }
        };
        let debouncer = new_debouncer(debounce, None, handler)?;
        let mut watcher = FolderWatcher {
            debouncer,
            roots: Vec::new(),
            absolute_roots,
            root_removed,
        };
        for (path, mode) in watch_plan(sources) {
            watcher.debouncer.watch(&path, mode)?;
            watcher.roots.push((path, mode));
        }
        watcher.publish_roots();
        Ok(watcher)
    }

    fn publish_roots(&self) {
        let absolute = self.roots.iter().map(|(path, _)| absolute(path)).collect();
        *self.absolute_roots.lock() = absolute;
    }

    /// Follows folders that appeared or disappeared since the last look.
    /// Returns whether the watches changed.
    fn refresh(&mut self, sources: &RuleSources) -> bool {
        let plan = watch_plan(sources);
        let rewatch = self.root_removed.swap(false, Ordering::Relaxed);
        if plan == self.roots && !rewatch {
            return false;
        }
        for (path, _) in std::mem::take(&mut self.roots) {
            // A root that was deleted has no watch left to remove.
            let _ = self.debouncer.unwatch(&path);
        }
        for (path, mode) in plan {
            match self.debouncer.watch(&path, mode) {
                Ok(()) => self.roots.push((path, mode)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot watch folder")
                }
            }
        }
        self.publish_roots();
        true
    }
}

/// The folders to watch for `sources`, each once, recursive where it matters.
fn watch_plan(sources: &RuleSources) -> Vec<(PathBuf, RecursiveMode)> {
    let mut plan: Vec<(PathBuf, RecursiveMode)> = Vec::new();
    for path in sources.paths.iter().chain([&sources.scripts_dir]) {
        let root = if path.is_dir() {
            (path.clone(), RecursiveMode::Recursive)
        } else {
            (existing_parent(path), RecursiveMode::NonRecursive)
        };
        match plan.iter_mut().find(|(p, _)| *p == root.0) {
            Some(entry) if root.1 == RecursiveMode::Recursive => entry.1 = root.1,
            Some(_) => {}
            None => plan.push(root),
        }
    }
    plan
}

/// The nearest folder above `path` that exists (`.` for a bare relative name).
fn existing_parent(path: &Path) -> PathBuf {
    let mut current = path.parent();
    while let Some(dir) = current {
        if dir.as_os_str().is_empty() {
            break;
        }
        if dir.is_dir() {
            return dir.to_path_buf();
        }
        current = dir.parent();
    }
    PathBuf::from(".")
}

/// `path` made absolute the way the watcher does it.
fn absolute(path: &Path) -> PathBuf {
    match std::env::current_dir() {
        Ok(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

fn removes_a_root(event: &DebouncedEvent, roots: &Mutex<Vec<PathBuf>>) -> bool {
    if !event.kind.is_remove() && !matches!(event.kind, EventKind::Modify(_)) {
        return false;
    }
    let roots = roots.lock();
    event.paths.iter().any(|path| roots.contains(path))
}

/// Whether an event may change what a reload would load.
fn is_relevant(event: &DebouncedEvent) -> bool {
    if event.need_rescan() {
        return true;
    }
    let kind_matters = matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    );
    kind_matters && event.paths.iter().any(|path| is_relevant_path(path))
}

/// Rule and script files, and names without an extension (folders, which
/// may be renamed or removed whole). Not hidden files, backups or swap files.
fn is_relevant_path(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some(extension) => matches!(extension, "yaml" | "yml" | "rhai"),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rule_and_script_files_and_folders_matter() {
        for path in [
            "rules/a.yaml",
            "rules/a.yml",
            "scripts/lib/x.rhai",
            "rules/sub",
        ] {
            assert!(is_relevant_path(Path::new(path)), "{path}");
        }
        for path in [
            "rules/.a.yaml.swp",
            "rules/a.yaml~",
            "rules/a.yaml.swp",
            "rules/notes.txt",
        ] {
            assert!(!is_relevant_path(Path::new(path)), "{path}");
        }
    }

    #[test]
    fn files_are_watched_through_their_folder_and_missing_folders_through_an_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).unwrap();
        std::fs::write(dir.path().join("one.yaml"), "").unwrap();
        let sources = RuleSources {
            paths: vec![rules.clone(), dir.path().join("one.yaml")],
            scripts_dir: dir.path().join("missing").join("scripts"),
        };
        assert_eq!(
            watch_plan(&sources),
            vec![
                (rules, RecursiveMode::Recursive),
                (dir.path().to_path_buf(), RecursiveMode::NonRecursive),
            ]
        );
        assert_eq!(existing_parent(Path::new("scripts")), PathBuf::from("."));
    }
}
