//! Hot reload: the running rule set behind an atomic swap, rebuilt aside from
//! the rule and script folders when they change or on SIGHUP.
//!
//! [`RuleSetHandle`] holds the current [`RuleSet`] and what it was loaded
//! from. [`RuleSetHandle::reload`] compiles a whole new set with the same
//! code as start-up ([`load_rule_set`]); only a set that compiles replaces
//! the running one, in one atomic store, so an event is matched either
//! against the old set or the new one, never a mix. A set that does not
//! compile changes nothing: every error is logged as `path:line:col`, and the
//! failure shows in [`ReloadStatus`] (for `/healthz`) and in the metric
//! `zoomwire_reloads_total{outcome="failed"}`. Scripts are compiled into the
//! set, so a full rebuild is also what reloads every rule importing a
//! changed script. Runs keep the `Arc<RuleSet>` they started with.
//!
//! [`Watching`] and [`reload_on_change`] (in `reload/watch.rs`) drive it from the file system and SIGHUP.

mod watch;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch as channel;

use crate::engine::executor::RuleNames;
use crate::rules::compile::load_rule_set;
use crate::rules::{RuleError, RuleSet, RuleSources};
use crate::script::SandboxLimits;
pub use watch::{Watching, reload_on_change};

/// The daemon's `debounce` for [`Watching`]: an editor's save (write,
/// rename, chmod) makes one reload, and a change runs about 0.2 s after it.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);

/// The state of hot reload, as `/healthz` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadStatus {
    /// When the running set was loaded.
    pub loaded_at: DateTime<Utc>,
    /// Rules in the running set.
    pub rules: usize,
    /// Whether the latest attempt succeeded (false: the running set is older than the files).
    pub ok: bool,
    /// The latest failed attempt's errors, as `path:line:col: message`; empty when `ok`.
    pub errors: Vec<String>,
    /// Successful reloads since start (the first load not counted).
    pub reloads: u64,
    /// Failed reload attempts since start.
    pub failures: u64,
    /// Whether [`reload_on_change`] watches the folders and handles SIGHUP.
    pub watching: bool,
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadSummary {
    /// Rules in the new set.
    pub rules: usize,
    /// Names new in this set.
    pub added: Vec<String>,
    /// Names no longer in the set: their queued runs are dropped.
    pub removed: Vec<String>,
    /// How long loading and compiling took.
    pub elapsed: Duration,
}

/// The running rule set, swapped atomically on reload.
pub struct RuleSetHandle {
    current: ArcSwap<RuleSet>,
    sources: RuleSources,
    limits: SandboxLimits,
    status: Mutex<ReloadStatus>,
    /// Held while a reload compiles, so that two reloads never race.
    reloading: Mutex<()>,
    /// Counts swaps; the scheduler waits on it to re-read schedules.
    generation: channel::Sender<u64>,
}

impl std::fmt::Debug for RuleSetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSetHandle")
            .field("sources", &self.sources)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl RuleSetHandle {
    /// Loads the first set, as start-up does; errors are returned, not logged.
    pub fn load(sources: RuleSources, limits: SandboxLimits) -> Result<Self, Vec<RuleError>> {
        let set = load_rule_set(&sources, &limits)?;
        Ok(Self::with_set(set, sources, limits))
    }

    /// Wraps a set already loaded from `sources` with `limits`.
    pub fn with_set(set: RuleSet, sources: RuleSources, limits: SandboxLimits) -> Self {
        let status = ReloadStatus {
            loaded_at: Utc::now(),
            rules: set.rules().len(),
            ok: true,
            errors: Vec::new(),
            reloads: 0,
            failures: 0,
            watching: false,
        };
        metrics::gauge!("zoomwire_rules_loaded").set(set.rules().len() as f64);
        RuleSetHandle {
            current: ArcSwap::from_pointee(set),
            sources,
            limits,
            status: Mutex::new(status),
            reloading: Mutex::new(()),
            generation: channel::channel(0).0,
        }
    }

    /// The running set. Hold the `Arc` for the whole of one event or run.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    pub fn sources(&self) -> &RuleSources {
        &self.sources
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
    }

    /// Changes each time a new set is swapped in.
    pub fn subscribe(&self) -> channel::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Builds a new set aside and swaps it in if it compiles. If not, the
    /// running set stays, every error is logged, and the status says so.
    /// Blocking (reads and compiles files): call it from a blocking thread.
    pub fn reload(&self) -> Result<ReloadSummary, Vec<RuleError>> {
        let _one_at_a_time = self.reloading.lock();
        let started = Instant::now();
        match load_rule_set(&self.sources, &self.limits) {
            Ok(set) => Ok(self.swap(set, started.elapsed())),
            Err(errors) => {
                self.refuse(&errors);
                Err(errors)
            }
        }
    }

    fn swap(&self, set: RuleSet, elapsed: Duration) -> ReloadSummary {
        let names = |set: &RuleSet| -> BTreeSet<String> {
            set.rules().iter().map(|r| r.name.to_string()).collect()
        };
        let (old, new) = (names(&self.current.load()), names(&set));
        let summary = ReloadSummary {
            rules: set.rules().len(),
            added: new.difference(&old).cloned().collect(),
            removed: old.difference(&new).cloned().collect(),
            elapsed,
        };
        self.current.store(Arc::new(set));
        {
            let mut status = self.status.lock();
            status.loaded_at = Utc::now();
            status.rules = summary.rules;
            status.ok = true;
            status.errors.clear();
            status.reloads += 1;
        }
        self.generation.send_modify(|generation| *generation += 1);
        metrics::counter!("zoomwire_reloads_total", "outcome" => "ok").increment(1);
        metrics::gauge!("zoomwire_rules_loaded").set(summary.rules as f64);
        tracing::info!(
            rules = summary.rules,
            added = ?summary.added,
            removed = ?summary.removed,
            elapsed_ms = elapsed.as_millis() as u64,
            "rules reloaded"
        );
        summary
    }

    fn refuse(&self, errors: &[RuleError]) {
        for error in errors {
            tracing::error!("{error}");
        }
        let running = {
            let mut status = self.status.lock();
            status.ok = false;
            status.errors = errors.iter().map(ToString::to_string).collect();
            status.failures += 1;
            status.rules
        };
        metrics::counter!("zoomwire_reloads_total", "outcome" => "failed").increment(1);
        tracing::warn!(
            errors = errors.len(),
            rules = running,
            "reload refused: the running rules stay in place until the files compile"
        );
    }

    fn set_watching(&self, watching: bool) {
        self.status.lock().watching = watching;
    }
}

/// Queued runs ask this before they start: a rule removed by a reload runs no more.
impl RuleNames for RuleSetHandle {
    fn has_rule(&self, name: &str) -> bool {
        self.current.load().rule(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &std::path::Path) -> RuleSources {
        RuleSources {
            paths: vec![dir.join("rules")],
            scripts_dir: dir.join("scripts"),
        }
    }

    fn write_rule(dir: &std::path::Path, name: &str, body: &str) {
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        std::fs::write(dir.join("rules").join(format!("{name}.yaml")), body).unwrap();
    }

    #[test]
    fn a_failed_reload_keeps_the_running_set_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        write_rule(
            dir.path(),
            "a",
            "on: meeting.ended\ndo: log::info(\"a\");\n",
        );
        let handle = RuleSetHandle::load(sources(dir.path()), SandboxLimits::default()).unwrap();
        let before = handle.current();
        let generation = handle.subscribe();

        write_rule(dir.path(), "b", "on: meeting.ended\ndo: |\n  let x = ;\n");
        let errors = handle.reload().unwrap_err();
        assert!(Arc::ptr_eq(&before, &handle.current()));
        let status = handle.status();
        assert!(!status.ok);
        assert_eq!((status.reloads, status.failures, status.rules), (0, 1, 1));
        assert_eq!(status.errors, vec![errors[0].to_string()]);
        assert!(
            status.errors[0].contains("b.yaml:3:"),
            "{:?}",
            status.errors
        );
        assert!(!generation.has_changed().unwrap());

        write_rule(
            dir.path(),
            "b",
            "on: meeting.ended\ndo: log::info(\"b\");\n",
        );
        let summary = handle.reload().unwrap();
        assert_eq!(summary.added, vec!["b".to_string()]);
        assert!(summary.removed.is_empty());
        let status = handle.status();
        assert!(status.ok && status.errors.is_empty());
        assert_eq!((status.reloads, status.failures, status.rules), (1, 1, 2));
        assert!(generation.has_changed().unwrap());
        assert!(handle.has_rule("b") && !handle.has_rule("c"));
    }
}
