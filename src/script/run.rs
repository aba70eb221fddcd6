//! The run a script thread is executing, held in thread-locals.
//!
//! Rhai calls `on_progress` and the host functions without any context of
//! ours, so the pool worker installs the current run here before evaluating
//! (its deadline, its cancel flag, its [`RunEffects`]) and a guard removes it
//! afterwards, even when the evaluation panics. Conditions have their own,
//! lighter deadline cell: they must not pay for a clock read unless they run
//! long enough for it to matter.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rhai::Dynamic;

use crate::effects::EffectError;
use crate::effects::gateway::RunEffects;

/// The termination token `on_progress` returns when the deadline passed.
pub(crate) const TIMEOUT_TOKEN: &str = "zoomwire:timeout";
/// The termination token `on_progress` returns when the run was cancelled.
pub(crate) const CANCEL_TOKEN: &str = "zoomwire:cancelled";

/// Scripts read the clock every this many operations (a power of two).
pub(crate) const SCRIPT_CHECK_INTERVAL: u64 = 32;
/// Conditions read the clock every this many operations (a power of two);
/// most conditions finish before the first check and never read it.
pub(crate) const CONDITION_CHECK_INTERVAL: u64 = 64;

/// What the script thread knows about the run it executes.
pub(crate) struct ActiveRun {
    pub deadline: Instant,
    pub cancel: Arc<AtomicBool>,
    /// Set by the pool when the caller gave up waiting (the job's own flag is
    /// the caller's and is never written by the sandbox).
    pub abandoned: Arc<AtomicBool>,
    pub effects: Option<Arc<RunEffects>>,
    /// Effect errors thrown into the script, to recognise them if uncaught.
    pub thrown: Vec<EffectError>,
}

thread_local! {
    static ACTIVE_RUN: RefCell<Option<ActiveRun>> = const { RefCell::new(None) };
    /// `None` until a condition has run `CONDITION_CHECK_INTERVAL` operations.
    static CONDITION_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Removes the active run when dropped, restoring whatever was there before.
pub(crate) struct ActiveRunGuard {
    previous: Option<ActiveRun>,
}

impl Drop for ActiveRunGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        ACTIVE_RUN.with(|cell| {
            if let Ok(mut slot) = cell.try_borrow_mut() {
                *slot = previous;
            }
        });
    }
}

/// Makes `run` the current run of this thread until the guard is dropped.
pub(crate) fn enter_run(run: ActiveRun) -> ActiveRunGuard {
    let previous = ACTIVE_RUN.with(|cell| cell.replace(Some(run)));
    ActiveRunGuard { previous }
}

/// The check `on_progress` makes for scripts: cancelled, or past the deadline?
pub(crate) fn check_active_run() -> Option<Dynamic> {
    ACTIVE_RUN.with(|cell| {
        let run = cell.try_borrow().ok()?;
        let run = run.as_ref()?;
        if run.cancel.load(Ordering::Relaxed) || run.abandoned.load(Ordering::Relaxed) {
            return Some(Dynamic::from(CANCEL_TOKEN));
        }
        (Instant::now() >= run.deadline).then(|| Dynamic::from(TIMEOUT_TOKEN))
    })
}

/// The current run's effects gateway, if a run is active.
pub(crate) fn current_effects() -> Option<Arc<RunEffects>> {
    ACTIVE_RUN.with(|cell| cell.try_borrow().ok()?.as_ref()?.effects.clone())
}

/// Remembers an effect error thrown into the script.
pub(crate) fn note_thrown(error: EffectError) {
    ACTIVE_RUN.with(|cell| {
        if let Ok(mut run) = cell.try_borrow_mut()
            && let Some(run) = run.as_mut()
        {
            run.thrown.push(error);
        }
    });
}

/// Takes the effect errors thrown during the current run.
pub(crate) fn take_thrown() -> Vec<EffectError> {
    ACTIVE_RUN.with(|cell| {
        cell.try_borrow_mut()
            .ok()
            .and_then(|mut run| run.as_mut().map(|run| std::mem::take(&mut run.thrown)))
            .unwrap_or_default()
    })
}

/// Starts a condition evaluation: its clock starts at the first check.
pub(crate) fn reset_condition_clock() {
    CONDITION_DEADLINE.with(|cell| cell.set(None));
}

/// The check `on_progress` makes for conditions.
pub(crate) fn check_condition_clock(timeout: Duration) -> Option<Dynamic> {
    CONDITION_DEADLINE.with(|cell| match cell.get() {
        None => {
            cell.set(Some(Instant::now() + timeout));
            None
        }
        Some(deadline) => (Instant::now() >= deadline).then(|| Dynamic::from(TIMEOUT_TOKEN)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(deadline: Instant) -> ActiveRun {
        ActiveRun {
            deadline,
            cancel: Arc::new(AtomicBool::new(false)),
            abandoned: Arc::default(),
            effects: None,
            thrown: Vec::new(),
        }
    }

    #[test]
    fn guard_restores_the_previous_run() {
        assert!(check_active_run().is_none());
        let outer = enter_run(run(Instant::now() + Duration::from_secs(60)));
        assert!(check_active_run().is_none());
        {
            let _inner = enter_run(run(Instant::now()));
            assert_eq!(
                check_active_run().unwrap().into_string().unwrap(),
                TIMEOUT_TOKEN
            );
        }
        assert!(check_active_run().is_none());
        drop(outer);
        assert!(check_active_run().is_none());
    }

    #[test]
    fn cancellation_wins_over_the_clock() {
        let active = run(Instant::now() + Duration::from_secs(60));
        let cancel = active.cancel.clone();
        let _guard = enter_run(active);
        cancel.store(true, Ordering::Relaxed);
        assert_eq!(
            check_active_run().unwrap().into_string().unwrap(),
            CANCEL_TOKEN
        );
    }

    #[test]
    fn condition_clock_starts_at_the_first_check() {
        reset_condition_clock();
        assert!(check_condition_clock(Duration::ZERO).is_none());
        assert!(check_condition_clock(Duration::ZERO).is_some());
        reset_condition_clock();
        assert!(check_condition_clock(Duration::from_secs(60)).is_none());
        assert!(check_condition_clock(Duration::from_secs(60)).is_none());
    }
}
