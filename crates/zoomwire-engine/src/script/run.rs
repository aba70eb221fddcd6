//! The run a script thread is executing, held in thread-locals.
//!
//! Rhai calls `on_progress` and the host functions without any context of
//! ours, so the pool worker installs the current run here before evaluating
//! (its deadline, its cancel flag, its [`RunEffects`]) and a guard removes it
//! afterwards, even when the evaluation panics. Conditions have their own,
//! lighter deadline cell: they must not pay for a clock read unless they run
//! long enough for it to matter.
//!
//! The memory budget is checked here as well, before every operation: the
//! allocator raises a flag when the thread passes its budget
//! ([`super::memory`]), and reading it costs one thread-local load.
//!
//! Operations are counted here too, not taken from Rhai: when a native
//! function calls back into the script (`array.all(|x| ...)`, `map`, `sort`
//! with a comparator), Rhai runs the callback on a copy of its counter and
//! throws the copy away, so its count (and its `max_operations`) never grows
//! across callbacks, and a check keyed on its count may never come.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rhai::{Dynamic, NativeCallContext};

use super::last_effect::{LastEffects, is_the_call};
use super::memory::budget_exceeded;
use crate::effects::EffectError;
use crate::effects::gateway::RunEffects;

/// The termination token `on_progress` returns when the deadline passed.
pub(crate) const TIMEOUT_TOKEN: &str = "zoomwire:timeout";
/// The termination token `on_progress` returns when the run was cancelled.
pub(crate) const CANCEL_TOKEN: &str = "zoomwire:cancelled";
/// The termination token `on_progress` returns past `max_operations`.
pub(crate) const OPERATIONS_TOKEN: &str = "zoomwire:operations";
/// The termination token once the thread passed its memory budget.
pub(crate) const MEMORY_TOKEN: &str = "zoomwire:memory";
/// The termination token once the run asked for an effect past `max_effects`.
pub(crate) const EFFECTS_TOKEN: &str = "zoomwire:effects";
/// The termination token once a run executing on a runtime thread must go
/// on on a script thread ([`super::inline`]): it waits, or ran too long.
pub(crate) const MOVED_TOKEN: &str = "zoomwire:moved";
/// The start of the termination token once a value too large to print was
/// about to be printed (see [`super::guards`]); the rest names the limit it
/// breaks as Rhai does ("Length of string").
pub(crate) const TOO_LARGE_TOKEN: &str = "zoomwire:too large:";

/// The termination token for a value that breaks `what` (as
/// [`super::value::oversized`] names it).
pub(crate) fn too_large_token(what: &str) -> &'static str {
    match what {
        "Length of string" => "zoomwire:too large:Length of string",
        "Size of array/BLOB" => "zoomwire:too large:Size of array/BLOB",
        "Size of object map" => "zoomwire:too large:Size of object map",
        "Length of map key" => "zoomwire:too large:Length of map key",
        _ => "zoomwire:too large:Depth of value",
    }
}

/// Scripts read the clock every this many operations (a power of two).
pub(crate) const SCRIPT_CHECK_INTERVAL: u64 = 32;
/// Conditions read the clock every this many operations (a power of two);
/// most conditions finish before the first check and never read it.
pub(crate) const CONDITION_CHECK_INTERVAL: u64 = 64;
/// How often a script's variables are measured (see [`take_scan_due`]).
pub(crate) const SCAN_INTERVAL: Duration = Duration::from_millis(10);

/// What the script thread knows about the run it executes.
pub(crate) struct ActiveRun {
    pub deadline: Instant,
    pub cancel: Arc<AtomicBool>,
    /// Set by the pool when the caller gave up waiting (the job's own flag is
    /// the caller's and is never written by the sandbox).
    pub abandoned: Arc<AtomicBool>,
    pub effects: Option<Arc<RunEffects>>,
    /// When the script's variables were last measured.
    last_scan: Instant,
    /// Effect errors thrown into the script, to recognise them if uncaught.
    pub thrown: Vec<EffectError>,
    /// The calls of effects left to the run that may end the script.
    last_effects: Option<LastEffects>,
    /// Set while the run executes on a runtime thread ([`super::inline`]).
    inline: Option<Inline>,
}

/// A run on a runtime thread.
struct Inline {
    /// When it moves to a script thread; `None` once it started an effect,
    /// after which it finishes where it is.
    move_at: Option<Instant>,
    /// Its log lines while it may still move, written out once it stays
    /// ([`release_held_logs`]); dropped if it moves, as it writes them again
    /// on the script thread.
    held: Vec<HeldLine>,
}

/// A log line held by a run on a runtime thread.
struct HeldLine {
    level: &'static str,
    message: String,
    at: DateTime<Utc>,
}

/// The most log lines a run on a runtime thread holds: at the next it moves
/// (a run that logs that much goes on where its log is written at once).
pub(crate) const MAX_HELD_LINES: usize = 64;

impl ActiveRun {
    pub(crate) fn new(
        deadline: Instant,
        cancel: Arc<AtomicBool>,
        abandoned: Arc<AtomicBool>,
        effects: Option<Arc<RunEffects>>,
    ) -> ActiveRun {
        ActiveRun {
            deadline,
            cancel,
            abandoned,
            effects,
            thrown: Vec::new(),
            last_scan: Instant::now(),
            last_effects: None,
            inline: None,
        }
    }

    /// Executes the run on a runtime thread, to be moved to a script thread
    /// at `move_at` or at its first wait ([`super::inline`]).
    pub(crate) fn inline(mut self, move_at: Instant) -> ActiveRun {
        self.inline = Some(Inline {
            move_at: Some(move_at),
            held: Vec::new(),
        });
        self
    }

    /// Leaves the effect the script ends with to the run, when it is one
    /// of the calls at `last` ([`super::last_effect`]).
    pub(crate) fn with_last_effects(mut self, last: LastEffects) -> ActiveRun {
        self.last_effects = Some(last);
        self
    }
}

thread_local! {
    static ACTIVE_RUN: RefCell<Option<ActiveRun>> = const { RefCell::new(None) };
    /// Set once the active run is terminated: from then on every operation
    /// fails, so that a `try` around a function call cannot swallow the end.
    static RUN_TERMINATED: Cell<Option<&'static str>> = const { Cell::new(None) };
    /// Operations of the active run, callbacks included.
    static RUN_OPERATIONS: Cell<u64> = const { Cell::new(0) };
    /// Set when the active run's variables are due to be measured.
    static SCAN_DUE: Cell<bool> = const { Cell::new(false) };
    /// `None` until a condition has run `CONDITION_CHECK_INTERVAL` operations.
    static CONDITION_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    static CONDITION_TERMINATED: Cell<Option<&'static str>> = const { Cell::new(None) };
    static CONDITION_OPERATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Removes the active run when dropped, restoring whatever was there before.
pub(crate) struct ActiveRunGuard {
    previous: Option<ActiveRun>,
}

impl Drop for ActiveRunGuard {
    fn drop(&mut self) {
        // A run that panicked ends where it is: the lines it wrote are its
        // (on a script thread they were written at once).
        if std::thread::panicking() {
            release_held_logs();
        }
        reset_run_counters();
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
    reset_run_counters();
    let previous = ACTIVE_RUN.with(|cell| cell.replace(Some(run)));
    ActiveRunGuard { previous }
}

fn reset_run_counters() {
    RUN_TERMINATED.with(|cell| cell.set(None));
    RUN_OPERATIONS.with(|cell| cell.set(0));
    SCAN_DUE.with(|cell| cell.set(false));
}

/// Counts one operation in `cell`, returning the new count.
fn count(cell: &'static std::thread::LocalKey<Cell<u64>>) -> u64 {
    cell.with(|cell| {
        let count = cell.get() + 1;
        cell.set(count);
        count
    })
}

/// `on_progress` of scripts: checks the memory budget, counts operations
/// against `max_operations`, reads the clock every `SCRIPT_CHECK_INTERVAL`
/// of them, and once the run is terminated fails every operation that follows.
pub(crate) fn script_progress(max_operations: u64) -> Option<Dynamic> {
    if let Some(token) = RUN_TERMINATED.with(Cell::get) {
        return Some(Dynamic::from(token));
    }
    let operations = count(&RUN_OPERATIONS);
    let token = if budget_exceeded() {
        MEMORY_TOKEN
    } else if operations > max_operations {
        OPERATIONS_TOKEN
    } else if !operations.is_multiple_of(SCRIPT_CHECK_INTERVAL) {
        return None;
    } else {
        check_active_run()?
    };
    RUN_TERMINATED.with(|cell| cell.set(Some(token)));
    Some(Dynamic::from(token))
}

/// Cancelled, or past the deadline? Also marks the variables due for a scan.
fn check_active_run() -> Option<&'static str> {
    ACTIVE_RUN.with(|cell| {
        let mut run = cell.try_borrow_mut().ok()?;
        let run = run.as_mut()?;
        if run.cancel.load(Ordering::Relaxed) || run.abandoned.load(Ordering::Relaxed) {
            return Some(CANCEL_TOKEN);
        }
        let now = Instant::now();
        if now >= run.deadline {
            return Some(TIMEOUT_TOKEN);
        }
        if let Some(Inline {
            move_at: Some(at), ..
        }) = &run.inline
            && now >= *at
        {
            return Some(MOVED_TOKEN);
        }
        if now.duration_since(run.last_scan) >= SCAN_INTERVAL {
            run.last_scan = now;
            SCAN_DUE.with(|due| due.set(true));
        }
        None
    })
}

/// Ends the evaluation running on this thread (a script run, or a condition)
/// at its next operation, and every operation after it, with `token`.
pub(crate) fn terminate(token: &'static str) {
    RUN_TERMINATED.with(|cell| cell.set(Some(token)));
    CONDITION_TERMINATED.with(|cell| cell.set(Some(token)));
}

/// What ended the script run on this thread, if it was ended (a native
/// function may end it as its last step, with no operation after it).
pub(crate) fn run_terminated() -> Option<&'static str> {
    RUN_TERMINATED.with(Cell::get)
}

/// What ended the condition on this thread, likewise.
pub(crate) fn condition_terminated() -> Option<&'static str> {
    CONDITION_TERMINATED.with(Cell::get)
}

/// Whether the script's variables are due to be measured (and clears it).
pub(crate) fn take_scan_due() -> bool {
    SCAN_DUE.with(|due| due.replace(false))
}

/// The current run's effects gateway, if a run is active.
pub(crate) fn current_effects() -> Option<Arc<RunEffects>> {
    ACTIVE_RUN.with(|cell| cell.try_borrow().ok()?.as_ref()?.effects.clone())
}

/// Whether the host function called in `context` ends the current run's
/// script, an effect left to the run ([`super::last_effect`]).
pub(crate) fn is_last_effect(context: &NativeCallContext) -> bool {
    ACTIVE_RUN.with(|cell| {
        let run = cell.try_borrow();
        let run = run.as_ref().ok().and_then(|run| run.as_ref());
        let last = run.and_then(|run| run.last_effects.as_deref());
        last.is_some_and(|last| is_the_call(context, last))
    })
}

/// With the run on this thread: `None` on a script thread; on a runtime
/// thread, whether it may still move to a script thread (it has started
/// no effect).
fn inline_state() -> Option<bool> {
    ACTIVE_RUN.with(|cell| {
        let run = cell.try_borrow().ok()?;
        let inline = run.as_ref()?.inline.as_ref()?;
        Some(inline.move_at.is_some())
    })
}

/// Whether the run on this thread executes on a runtime thread.
pub(crate) fn runs_inline() -> bool {
    inline_state().is_some()
}

/// Whether the run on this thread executes on a runtime thread and may still
/// move to a script thread.
pub(crate) fn may_move() -> bool {
    inline_state() == Some(true)
}

/// The run on this (runtime) thread starts an effect: it stays here to its
/// end, and the log lines it held are written out first.
pub(crate) fn stay_inline() {
    ACTIVE_RUN.with(|cell| {
        if let Ok(mut run) = cell.try_borrow_mut()
            && let Some(inline) = run.as_mut().and_then(|run| run.inline.as_mut())
        {
            inline.move_at = None;
        }
    });
    release_held_logs();
}

/// Holds a log line of the run on this thread while it may still move:
/// `Err` gives the line back when it cannot (the run does not run here, or
/// holds [`MAX_HELD_LINES`] already).
pub(crate) fn hold_log(level: &'static str, message: String) -> Result<(), String> {
    ACTIVE_RUN.with(|cell| {
        let Ok(mut run) = cell.try_borrow_mut() else {
            return Err(message);
        };
        match run.as_mut().and_then(|run| run.inline.as_mut()) {
            Some(inline) if inline.move_at.is_some() && inline.held.len() < MAX_HELD_LINES => {
                inline.held.push(HeldLine {
                    level,
                    message,
                    at: Utc::now(),
                });
                Ok(())
            }
            _ => Err(message),
        }
    })
}

/// Writes out the log lines the run on this thread held, in order: it
/// stays on this thread (or ended here).
pub(crate) fn release_held_logs() {
    // Every run ends here: one that holds nothing costs a borrow, no more.
    let held = ACTIVE_RUN.with(|cell| {
        let mut run = cell.try_borrow_mut().ok()?;
        let run = run.as_mut()?;
        let held = std::mem::take(&mut run.inline.as_mut()?.held);
        if held.is_empty() {
            return None;
        }
        Some((held, run.effects.clone()?))
    });
    let Some((held, effects)) = held else {
        return;
    };
    for line in held {
        effects.log_at(line.level, line.message, line.at);
    }
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
    CONDITION_TERMINATED.with(|cell| cell.set(None));
    CONDITION_OPERATIONS.with(|cell| cell.set(0));
}

/// `on_progress` of conditions: checks the memory budget, counts operations
/// against `max_operations`; the clock starts at the first check; once the
/// condition is terminated every operation fails.
pub(crate) fn condition_progress(max_operations: u64, timeout: Duration) -> Option<Dynamic> {
    if let Some(token) = CONDITION_TERMINATED.with(Cell::get) {
        return Some(Dynamic::from(token));
    }
    let operations = count(&CONDITION_OPERATIONS);
    let token = if budget_exceeded() {
        MEMORY_TOKEN
    } else if operations > max_operations {
        OPERATIONS_TOKEN
    } else if !operations.is_multiple_of(CONDITION_CHECK_INTERVAL) {
        return None;
    } else {
        let expired = CONDITION_DEADLINE.with(|cell| match cell.get() {
            None => {
                cell.set(Some(Instant::now() + timeout));
                false
            }
            Some(deadline) => Instant::now() >= deadline,
        });
        if !expired {
            return None;
        }
        TIMEOUT_TOKEN
    };
    CONDITION_TERMINATED.with(|cell| cell.set(Some(token)));
    Some(Dynamic::from(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(deadline: Instant) -> ActiveRun {
        ActiveRun::new(deadline, Arc::default(), Arc::default(), None)
    }

    fn token(value: Option<Dynamic>) -> Option<String> {
        value.map(|v| v.into_string().unwrap())
    }

    const MANY: u64 = u64::MAX;

    /// Runs `n` operations of a script, returning the first termination.
    fn operate(n: u64, max_operations: u64) -> Option<String> {
        (0..n).find_map(|_| token(script_progress(max_operations)))
    }

    /// A run on a runtime thread, with a gateway whose log can be read.
    fn inline_run(effects: &Arc<RunEffects>) -> ActiveRun {
        let later = Instant::now() + Duration::from_secs(60);
        ActiveRun::new(later, Arc::default(), Arc::default(), Some(effects.clone())).inline(later)
    }

    fn messages(effects: &RunEffects) -> Vec<String> {
        effects
            .logs()
            .into_iter()
            .map(|line| line.message)
            .collect()
    }

    #[test]
    fn held_lines_are_dropped_when_the_run_moves_and_kept_when_it_stays_or_panics() {
        use crate::effects::recorder::RecordingEffects;
        use crate::effects::{CapabilitySet, EffectContext};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let context = EffectContext {
            rule: Arc::from("rule-a"),
            run_id: Arc::from("run-1"),
            deadline: Instant::now() + Duration::from_secs(60),
            http_hosts: Default::default(),
            download_token: None,
            zoom_account: Default::default(),
        };
        let effects = Arc::new(RunEffects::new(
            context,
            CapabilitySet::new([]),
            Arc::new(RecordingEffects::default()),
            runtime.handle().clone(),
        ));
        // Not on a runtime thread: nothing is held.
        assert!(hold_log("info", "direct".into()).is_err());
        {
            let _run = enter_run(inline_run(&effects));
            hold_log("info", "moved".into()).unwrap();
        }
        assert!(messages(&effects).is_empty(), "a run that moves drops them");
        {
            let _run = enter_run(inline_run(&effects));
            for n in 0..MAX_HELD_LINES {
                hold_log("info", format!("{n}")).unwrap();
            }
            assert!(hold_log("info", "one more".into()).is_err(), "full");
            stay_inline();
            assert_eq!(messages(&effects).len(), MAX_HELD_LINES);
            assert!(hold_log("info", "after".into()).is_err(), "it stays");
        }
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _run = enter_run(inline_run(&effects));
            hold_log("warn", "before the bug".into()).unwrap();
            panic!("a bug");
        }));
        assert!(panicked.is_err());
        assert_eq!(messages(&effects).last().unwrap(), "before the bug");
        assert_eq!(messages(&effects).len(), MAX_HELD_LINES + 1);
    }

    #[test]
    fn guard_restores_the_previous_run() {
        assert!(operate(SCRIPT_CHECK_INTERVAL, MANY).is_none());
        let outer = enter_run(run(Instant::now() + Duration::from_secs(60)));
        assert!(operate(SCRIPT_CHECK_INTERVAL, MANY).is_none());
        {
            let _inner = enter_run(run(Instant::now()));
            assert_eq!(operate(SCRIPT_CHECK_INTERVAL, MANY).unwrap(), TIMEOUT_TOKEN);
        }
        assert!(operate(SCRIPT_CHECK_INTERVAL, MANY).is_none());
        drop(outer);
        assert!(operate(SCRIPT_CHECK_INTERVAL, MANY).is_none());
    }

    #[test]
    fn termination_is_sticky_and_checked_every_interval() {
        let active = run(Instant::now() + Duration::from_secs(60));
        let cancel = active.cancel.clone();
        let _guard = enter_run(active);
        cancel.store(true, Ordering::Relaxed);
        assert!(operate(SCRIPT_CHECK_INTERVAL - 1, MANY).is_none());
        assert_eq!(operate(1, MANY).unwrap(), CANCEL_TOKEN);
        cancel.store(false, Ordering::Relaxed);
        assert_eq!(operate(1, MANY).unwrap(), CANCEL_TOKEN);
    }

    #[test]
    fn operations_are_counted_here() {
        let _guard = enter_run(run(Instant::now() + Duration::from_secs(60)));
        assert!(operate(100, 100).is_none());
        assert_eq!(operate(1, 100).unwrap(), OPERATIONS_TOKEN);
        assert_eq!(operate(1, MANY).unwrap(), OPERATIONS_TOKEN);
    }

    #[test]
    fn passing_the_memory_budget_ends_the_run_at_its_next_operation() {
        std::thread::spawn(|| {
            let _guard = enter_run(run(Instant::now() + Duration::from_secs(60)));
            let _budget = super::super::memory::enter_budget(1 << 20);
            assert!(operate(1, MANY).is_none());
            let held = vec![0u8; 2 << 20];
            assert_eq!(operate(1, MANY).unwrap(), MEMORY_TOKEN);
            drop(held);
            assert_eq!(operate(1, MANY).unwrap(), MEMORY_TOKEN, "the end is final");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn scans_are_due_every_interval() {
        let _guard = enter_run(run(Instant::now() + Duration::from_secs(60)));
        assert!(operate(SCRIPT_CHECK_INTERVAL, MANY).is_none());
        assert!(!take_scan_due());
        std::thread::sleep(SCAN_INTERVAL);
        assert!(operate(SCRIPT_CHECK_INTERVAL, MANY).is_none());
        assert!(take_scan_due());
        assert!(!take_scan_due());
    }

    #[test]
    fn condition_clock_starts_at_the_first_check() {
        let check = |n: u64, timeout| (0..n).find_map(|_| token(condition_progress(MANY, timeout)));
        let interval = CONDITION_CHECK_INTERVAL;
        reset_condition_clock();
        assert!(check(interval, Duration::ZERO).is_none());
        assert!(check(interval - 1, Duration::ZERO).is_none());
        assert_eq!(check(1, Duration::ZERO).unwrap(), TIMEOUT_TOKEN);
        assert_eq!(check(1, Duration::ZERO).unwrap(), TIMEOUT_TOKEN);
        reset_condition_clock();
        let minute = Duration::from_secs(60);
        assert!(check(10 * interval, minute).is_none());
        reset_condition_clock();
        assert!((0..10).all(|_| condition_progress(10, minute).is_none()));
        assert_eq!(
            token(condition_progress(10, minute)).unwrap(),
            OPERATIONS_TOKEN
        );
    }
}
